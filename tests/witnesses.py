"""Witness stores as an operator declares them in Pulumi.yaml (config.witnesses), one of each
storage type, and test values for their credentials' variables; shared by the test modules."""
from __future__ import annotations

import base64
import json

B2 = {"provider": "backblaze", "storage": "s3", "bucket": "social-witness", "region": "us-west-004",
      "endpoint": "s3.us-west-004.backblazeb2.com", "uri_style": "path",
      "credentials": {"s3-key": "env/T_WITNESS_B2_KEY", "s3-key-secret": "env/T_WITNESS_B2_SECRET"}}
GSTORE = {"provider": "google", "storage": "gcs", "bucket": "social-witness-g",
          "credentials": {"gcs-key-json-base64": "env/T_WITNESS_G_KEY"}}
BLOB = {"provider": "microsoft", "storage": "azure", "account": "socialwitness", "container": "witness",
        "credentials": {"media-sas": "env/T_WITNESS_BLOB_SAS"}}
WITNESSES = {"b2": B2, "gstore": GSTORE, "blob": BLOB}
# The values behind the references above (none is a real credential).
VALUES = {"T_WITNESS_B2_KEY": "b2-key-id-0001", "T_WITNESS_B2_SECRET": "b2-secret-value-0001",
          "T_WITNESS_G_KEY": base64.b64encode(json.dumps({"type": "service_account", "client_email": "w@p.iam",
                                                          "private_key": "-----BEGIN KEY-----"}).encode()).decode(),
          "T_WITNESS_BLOB_SAS": "sv=2022-11-02&sig=witnessSASvalue0001"}
