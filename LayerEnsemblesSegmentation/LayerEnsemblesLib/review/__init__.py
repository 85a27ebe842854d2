"""The review controller both GUIs drive (Qt module, web app): state, actions, events; no Qt, no trame."""
