"""Test support code (not tests): real servers on loopback for the integration tests."""
