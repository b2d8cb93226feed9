"""`standby lab up --services FILE`: the file is checked before anything is built, each error names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from standby.lab.configfile import load_services
from standby.lab.errors import LabError


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "services.toml"
    p.write_text(text)
    return p


def test_services_are_read_with_standby_toml_schema(tmp_path: Path) -> None:
    p = _write(tmp_path, '[[services]]\nname = "sip"\nstart = ["systemctl", "start", "kamailio"]\n'
                         'stop = ["systemctl", "stop", "kamailio"]\nplacement = "everywhere"\n')
    [svc] = load_services(p)
    assert svc["name"] == "sip" and svc["placement"] == "everywhere" and svc["start"][0] == "systemctl"
    assert "health" not in svc  # unset stays unset in the generated file


@pytest.mark.parametrize(("text", "names"), [
    ("[[services]]\nname = 'x'\nstart = []\nstop = ['true']\n", "services[0].start"),
    ("[[services]]\nname = 'x'\nstart = ['true']\n", "services[0].stop"),
    ("[[services]]\nname = 'x'\nstart = ['true']\nstop = ['true']\nplacment = 'active'\n", "services[0].placment"),
    ("[[services]]\nname = 'softswitch'\nstart = ['true']\nstop = ['true']\n", "services[0].name"),
    ("[[services]]\nname = 'a'\nstart = ['true']\nstop = ['true']\n"
     "[[services]]\nname = 'a'\nstart = ['true']\nstop = ['true']\n", "services[1].name"),
    ("[nodes]\n", "unexpected key(s) nodes"),
    ("", "no [[services]] table"),
    ("[[services]\n", "cannot read it as TOML"),
])
def test_bad_services_file_names_the_key(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(LabError) as e:
        load_services(_write(tmp_path, text))
    assert names in str(e.value)
