"""The Streamlit face of UAP Explorer: shared page glue (jobs, widgets, charts). Holds no attack math.

``jobs`` and ``charts`` never import Streamlit (they are plain Python, testable on their own); ``session``,
``cache`` and ``widgets`` are the Streamlit side.
"""
