"""Answers of the AWS calls that moto does not implement (the Price List API) or that a test
needs to shape (paging, throttling, a region the account cannot use), for botocore's Stubber,
which checks each against botocore's own service model. Prices here are test values."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from typing import Any

from botocore.awsrequest import AWSResponse

FILTERS = ("operatingSystem", "Linux"), ("tenancy", "Shared"), ("preInstalledSw", "NA")


def product(
    instance_type: str,
    region: str,
    usd: str,
    location_type: str = "AWS Region",
    market: str = "OnDemand",
) -> str:
    """One Price List product document, as GetProducts returns it: a JSON string."""
    sku = "SKU" + format(
        zlib.crc32(f"{instance_type} {region} {market} {location_type}".encode()), "08X"
    )
    return json.dumps(
        {
            "product": {
                "productFamily": "Compute Instance",
                "sku": sku,
                "attributes": {
                    "instanceType": instance_type,
                    "regionCode": region,
                    "locationType": location_type,
                    "marketoption": market,
                    "operatingSystem": "Linux",
                    "tenancy": "Shared",
                    "preInstalledSw": "NA",
                    "capacitystatus": "Used",
                },
            },
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {
                    f"{sku}.JRTCKXETXF": {
                        "offerTermCode": "JRTCKXETXF",
                        "sku": sku,
                        "priceDimensions": {
                            f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": "Hrs",
                                "pricePerUnit": {"USD": usd},
                                "description": f"${usd} per On Demand Linux {instance_type}",
                            }
                        },
                    }
                }
            },
        }
    )


def products_params(instance_type: str, region: str | None, token: str | None = None) -> dict:
    """What the refresher must send GetProducts for one type (and region)."""
    attributes = [("instanceType", instance_type), *FILTERS, ("capacitystatus", "Used")]
    if region is not None:
        attributes.append(("regionCode", region))
    params: dict[str, Any] = {
        "ServiceCode": "AmazonEC2",
        "Filters": [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in attributes],
        "FormatVersion": "aws_v1",
    }
    if token is not None:
        params["NextToken"] = token
    return params


def stub_prices(
    stubber: Any,
    instance_types: Iterable[str],
    regions: Iterable[str | None],
    pages: dict[tuple[str, str | None], list[list[str]]] | None = None,
) -> None:
    """Queue one GetProducts answer per (type, region) in the refresher's order: `pages` of
    product documents where given (each page after the first reached by a NextToken), else
    an empty answer."""
    pages = pages or {}
    for instance_type in sorted(instance_types):
        for region in regions:
            answers = pages.get((instance_type, region), [[]])
            for index, documents in enumerate(answers):
                reply: dict[str, Any] = {"FormatVersion": "aws_v1", "PriceList": documents}
                if index + 1 < len(answers):
                    reply["NextToken"] = f"page-{index + 1}"
                token = f"page-{index}" if index else None
                stubber.add_response(
                    "get_products", reply, products_params(instance_type, region, token)
                )


class _Raw:
    """The raw body botocore reads from an HTTP response."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterable[bytes]:
        yield self.body


def ec2_error(code: str, status: int, url: str = "https://ec2.amazonaws.com/") -> AWSResponse:
    """An EC2 error as the service sends it (the EC2 query protocol's XML), for a `before-send`
    handler: botocore parses it and decides on retries as it would for the real one."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{code} (test)</Message></Error>"
        "</Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
    ).encode()
    return AWSResponse(url, status, {"Content-Type": "text/xml"}, _Raw(body))
