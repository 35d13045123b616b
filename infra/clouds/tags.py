"""Tags (AWS, Azure) and labels (GCP) on every resource that takes them: site, role, managed-by.

One stack transformation adds them, so no resource can be forgotten, and a resource's own tags
win over these. Whether a resource takes them is read from its SDK class (the `tags` or
`labels` argument of its constructor), not from a list kept by hand. GCP's `tags` are network
tags (firewall targets), so GCP resources get `labels`. The values are valid labels everywhere
(lowercase letters, digits and dashes).
"""
from __future__ import annotations

import inspect

import pulumi

MANAGED_BY = "failover"


def labels(site: str, role: str) -> dict[str, str]:
    return {"site": site, "role": role, "managed-by": MANAGED_BY}


def field_for(resource_type: str, cls: type) -> str | None:
    """`tags` or `labels`, whichever this resource's class takes for them, or None."""
    wanted = "labels" if resource_type.startswith("gcp:") else "tags"
    init = getattr(cls, "_internal_init", None)
    if init is None:  # component resources and the toolkit's own (dynamic) resources
        return None
    return wanted if wanted in inspect.signature(init).parameters else None


def register(site: str, role: str) -> None:
    """From here on, every resource the stack creates gets the labels (its own tags on top)."""
    ours = labels(site, role)

    def transform(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult | None:
        field = field_for(args.type_, type(args.resource))
        if field is None:
            return None
        own = args.props.get(field)
        merged = pulumi.Output.from_input(own).apply(lambda value: {**ours, **(value or {})}) if own else ours
        return pulumi.ResourceTransformationResult(props={**args.props, field: merged}, opts=args.opts)

    pulumi.runtime.register_stack_transformation(transform)
