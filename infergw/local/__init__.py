"""The embedded local stack: AWS emulator, provisioning, endpoint host, gateway front end."""
