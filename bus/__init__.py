"""The only package that touches NATS: subjects, streams, typed publish/request/consume, actors."""
