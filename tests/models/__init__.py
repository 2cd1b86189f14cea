"""Backbone tests: the contract every option of conf/backbone/ keeps (tests.models.backbone_zoo)."""
