"""Speech and language providers that implement :mod:`audiosocket_ai.interfaces`."""
