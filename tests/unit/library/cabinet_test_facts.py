#!/usr/bin/python
# Test-only module for tests/unit/test_role_inputs.py: sets host facts (memtotal_mb, ...) so a
# role's validation is tested against a machine the test describes, not the controller it runs on.
"""Set the given facts on the host."""

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    module = AnsibleModule(argument_spec={"facts": {"type": "dict", "required": True}}, supports_check_mode=True)
    module.exit_json(changed=False, ansible_facts=module.params["facts"])


if __name__ == "__main__":
    main()
