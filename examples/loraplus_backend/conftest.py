"""Lets the tests import ``adaptkit_loraplus`` from this folder when it is not pip-installed
(pytest puts a conftest's folder on ``sys.path``)."""
