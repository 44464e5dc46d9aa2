"""Everything that travels on the bus: frozen, tagged msgspec Structs.

Schemas evolve by adding fields with defaults only; a reader never breaks on a newer writer.
"""
