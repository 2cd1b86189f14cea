"""okd's tests: a package, so that test modules import their shared helpers as ``tests.<module>``
(``tests.helpers``, ``tests.wandb_records``, ``tests.models.backbone_zoo``) with no ``sys.path`` edits;
fixtures shared by every module are in tests/conftest.py."""
