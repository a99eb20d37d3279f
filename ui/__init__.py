"""The Streamlit app's own package: colours, chart style, and the words pages write from measurements."""
