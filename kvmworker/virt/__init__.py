"""libvirt plumbing for the VmHandler: the connection, domain XML, storage rules."""
