"""Example applications; ``metamorph node --app examples.orders`` runs them."""
