"""imgcap's Optuna sweeper, declared to Hydra (the code lives in :mod:`imgcap.sweep`)."""
