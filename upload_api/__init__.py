"""The FastAPI service phones and the web UI talk to."""
