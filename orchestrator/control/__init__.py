"""The control plane: the control socket and its commands, the notify socket, the file watcher."""
