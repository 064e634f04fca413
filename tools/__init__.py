"""Developer tools run from the repository (`make docs`); never installed, never imported by the service."""
