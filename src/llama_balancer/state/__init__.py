"""Live state the app owns: backends, in-flight slots, sticky bindings, access stats."""
