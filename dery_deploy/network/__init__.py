"""The reassembled network: adapters, the new head, plans and the AssembledNet a plan describes,
and the keys of the items a plan is made of (what profiles measure)."""
