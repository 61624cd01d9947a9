"""Model kinds, one module each: kinds/base.py is the contract, registry.py the order they are asked in."""
