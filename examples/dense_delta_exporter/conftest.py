"""Lets the tests import ``adaptkit_densedelta`` from this folder when it is not pip-installed
(pytest puts a conftest's folder on ``sys.path``)."""
