"""Role loops: thin tasks that feed network events into the round machines (through a
`Driver`) and carry out the actions the machines return."""
