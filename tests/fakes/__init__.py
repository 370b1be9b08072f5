"""In-process fakes of remote services, speaking their real wire protocols, for tests."""
