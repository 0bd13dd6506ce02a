"""Domain logic that is neither HTTP nor a driver: codecs, money, rules, events."""
