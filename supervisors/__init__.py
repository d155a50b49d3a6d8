"""The engines: one OS process per replica, owned by a state machine, reconciled from config."""
