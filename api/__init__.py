"""The HTTP side of the service: FastAPI app (`api.main.create_app`) and the `lbdn` command."""
