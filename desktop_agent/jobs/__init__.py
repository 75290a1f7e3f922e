"""Job state machine, controller, event bus and scheduler."""
