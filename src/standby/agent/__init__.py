"""The node agent: observe, decide (standby.decide), act, and tell the peer.

One file per part, each saying in its docstring what it owns and what it may not do; node.py wires
them together and runs the loop. This file owns nothing but that map; it may not hold code.
"""
