"""Reading what users and IDRiD supply: safe image loading, the IDRiD reader, splits and folds, and the
synthetic fundus generator that tests and demos use instead of real photographs."""
