"""The node agent: observe, decide (standby.decide), act, and tell the peer; node.py wires the parts."""
