"""One package per actor process. Actors share only `schemas`, `bus` and the private `_postgres`."""
