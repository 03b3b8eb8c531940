"""One blueprint per audience: vendors, SAP Marketing Cloud, Emarsys, operators."""
