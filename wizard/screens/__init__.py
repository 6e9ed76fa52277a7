"""The wizard's step screens, one module each, in the order the user meets them."""
