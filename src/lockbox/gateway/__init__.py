"""The ``[secure]`` email gateway: staff mail received over SMTP is taken into the message center, and
external recipients read and answer it on a verified web page."""
