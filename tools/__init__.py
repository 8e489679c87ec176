"""Developer tools that are not part of the product (real-backend builds, ...)."""
