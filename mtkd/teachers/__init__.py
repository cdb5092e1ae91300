"""Stage 1: the teacher ensemble, one Ray Tune trial per member."""
