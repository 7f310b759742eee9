"""Helpers shared by test packages (importable as ``helpers``: ``tests/conftest.py`` puts
``tests/`` on ``sys.path``)."""
