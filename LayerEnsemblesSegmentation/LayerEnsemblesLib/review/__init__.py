"""The review layer: what both GUIs drive (no Qt, no trame), above the engine and the scene logic."""
