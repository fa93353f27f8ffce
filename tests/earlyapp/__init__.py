"""An app listed before marathon whose models.py imports Lock (see tests/test_app.py)."""
