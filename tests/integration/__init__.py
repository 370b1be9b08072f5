"""Tests against a real Asterisk (marker ``integration``); see docs/integration-tests.md."""
