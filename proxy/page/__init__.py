"""The web page: a list of the objects, uploads through tus and a player, served
by proxy/web/page.py from static/; vendor.py refreshes the third-party scripts."""
