"""The one training core shared by teachers, the student and the MT-DNN baseline."""
