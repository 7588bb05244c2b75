// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title TestWallet: a minimal ERC-1271 smart wallet for tests.
/// @notice TEST CONTRACT ONLY. A signature is valid for this wallet when it is a canonical
/// 65-byte ECDSA signature (r, s, v; low s; v 27/28) of the given hash by `owner`. The hash is
/// used as is (no extra wrapping), so the owner signs exactly the EIP-712 digest the token
/// computes for an authorization whose `from` is this wallet.
contract TestWallet {
    /// bytes4(keccak256("isValidSignature(bytes32,bytes)"))
    bytes4 private constant ERC1271_MAGIC_VALUE = 0x1626ba7e;
    bytes4 private constant ERC1271_INVALID = 0xffffffff;
    uint256 private constant SECP256K1_HALF_N =
        0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    address public immutable owner;

    constructor(address owner_) {
        owner = owner_;
    }

    /// @notice ERC-1271: returns 0x1626ba7e when `signature` is `owner`'s signature of `hash`,
    /// 0xffffffff otherwise (never reverts).
    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        if (signature.length != 65) return ERC1271_INVALID;
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (uint256(s) > SECP256K1_HALF_N || (v != 27 && v != 28)) return ERC1271_INVALID;
        address signer = ecrecover(hash, v, r, s);
        return signer != address(0) && signer == owner ? ERC1271_MAGIC_VALUE : ERC1271_INVALID;
    }

    /// @notice Lets the owner make the wallet call another contract (e.g. to submit
    /// receiveWithAuthorization with the wallet as payee, or to move tokens out).
    function execute(address target, bytes calldata data) external returns (bytes memory) {
        require(msg.sender == owner, "TestWallet: caller is not the owner");
        (bool ok, bytes memory ret) = target.call(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(ret, 0x20), mload(ret))
            }
        }
        return ret;
    }
}
