"""Round state machines of the sorap2p protocol (pure, sans-IO, table-driven).

One machine per role: `AggregatorMachine`, `TrainerMachine`, `ValidatorMachine`. Each is fed
events (network messages that already passed gossip validation, results of work the node
did, timer expiries) with the current time, and returns actions (publish this message, fetch
that update, start training, arm a timer, persist, submit a proof). The node layer performs
the actions and feeds their results back as events. Every transition is listed in the
machine's `TABLE`, which also renders the diagrams in protocols/rounds.md.
"""
