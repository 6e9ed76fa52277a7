"""Widgets the wizard draws itself: step bar, memory bar, token histogram, loss plot."""
