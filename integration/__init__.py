"""The integration stage: the platform speaking with other hospitals' systems (HL7 v2 over MLLP).

It comes last in the flow because it reacts to every earlier stage (orders in, results out) and so
may use the public face of each of them; nothing imports it but the composition root.
"""
