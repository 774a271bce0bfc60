"""Messages and stubs of the sandbox.v1 proto package (generated, do not edit)."""
