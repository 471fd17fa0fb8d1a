"""The feedback store's schema, as named migrations applied at start-up."""
