// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

/// @title TestPermitToken: an ERC-20 with EIP-2612 `permit` and without EIP-3009.
/// @notice TEST TOKEN ONLY. Anyone may call `mint`; it has no owner.
/// The kind of token x402's Permit2 transfer method exists for: it cannot be paid with
/// `transferWithAuthorization`, so a payer approves Permit2 (or signs an EIP-2612 permit for
/// it, which a facilitator submits first under the `eip2612GasSponsoring` extension). Written
/// for x402-cluster from the EIP-20, EIP-712 and EIP-2612 specifications; its errors are those
/// of OpenZeppelin Contracts 5 (`ERC2612ExpiredSignature`, `ERC2612InvalidSigner`,
/// `ERC20InsufficientBalance`, `ERC20InsufficientAllowance`), the most
/// common EIP-2612 implementation, so that a facilitator's diagnosis meets what it meets on
/// real tokens. The EIP-712 name and version are constructor arguments.
contract TestPermitToken {
    /// keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
    bytes32 private constant EIP712_DOMAIN_TYPEHASH =
        0x8b73c3c69bb8fe3d512ecc4cf759cc79239f7b179b0ffacaa9a75d522b39400f;

    /// keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)")
    bytes32 public constant PERMIT_TYPEHASH =
        0x6e71edae12b1b97f4d1f60370fef10105fa2faae0126114a169c64845d6126c9;

    /// Upper bound of a canonical ("low") secp256k1 `s`: floor(n / 2) (EIP-2).
    uint256 private constant SECP256K1_HALF_N =
        0x7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0;

    string public name;
    string public version;
    string public constant symbol = "TPT";
    uint8 public constant decimals = 6;
    uint256 public totalSupply;

    mapping(address => uint256) public balanceOf;
    mapping(address => mapping(address => uint256)) public allowance;
    /// EIP-2612: the next permit nonce of each owner.
    mapping(address => uint256) public nonces;

    bytes32 private immutable _nameHash;
    bytes32 private immutable _versionHash;
    uint256 private immutable _cachedChainId;
    bytes32 private immutable _cachedDomainSeparator;

    event Transfer(address indexed from, address indexed to, uint256 value);
    event Approval(address indexed owner, address indexed spender, uint256 value);

    error ERC2612ExpiredSignature(uint256 deadline);
    error ERC2612InvalidSigner(address signer, address owner);
    error ERC20InsufficientBalance(address sender, uint256 balance, uint256 needed);
    error ERC20InsufficientAllowance(address spender, uint256 allowance, uint256 needed);
    error ERC20InvalidReceiver(address receiver);
    error ERC20InvalidSpender(address spender);

    constructor(string memory name_, string memory version_) {
        name = name_;
        version = version_;
        _nameHash = keccak256(bytes(name_));
        _versionHash = keccak256(bytes(version_));
        _cachedChainId = block.chainid;
        _cachedDomainSeparator = _buildDomainSeparator();
    }

    // ------------------------------------------------------------------------------ EIP-712

    /// The domain separator of the current chain (recomputed after a fork changes the id).
    function DOMAIN_SEPARATOR() public view returns (bytes32) {
        if (block.chainid == _cachedChainId) {
            return _cachedDomainSeparator;
        }
        return _buildDomainSeparator();
    }

    function _buildDomainSeparator() private view returns (bytes32) {
        return keccak256(
            abi.encode(EIP712_DOMAIN_TYPEHASH, _nameHash, _versionHash, block.chainid, address(this))
        );
    }

    // ------------------------------------------------------------------------------ ERC-20

    /// TEST ONLY: anyone may mint.
    function mint(address to, uint256 value) external {
        if (to == address(0)) revert ERC20InvalidReceiver(address(0));
        totalSupply += value;
        balanceOf[to] += value;
        emit Transfer(address(0), to, value);
    }

    function transfer(address to, uint256 value) external returns (bool) {
        _transfer(msg.sender, to, value);
        return true;
    }

    function approve(address spender, uint256 value) external returns (bool) {
        _approve(msg.sender, spender, value);
        return true;
    }

    function transferFrom(address from, address to, uint256 value) external returns (bool) {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            if (allowed < value) revert ERC20InsufficientAllowance(msg.sender, allowed, value);
            allowance[from][msg.sender] = allowed - value;
        }
        _transfer(from, to, value);
        return true;
    }

    function _transfer(address from, address to, uint256 value) private {
        if (to == address(0)) revert ERC20InvalidReceiver(address(0));
        uint256 balance = balanceOf[from];
        if (balance < value) revert ERC20InsufficientBalance(from, balance, value);
        unchecked {
            balanceOf[from] = balance - value;
        }
        balanceOf[to] += value;
        emit Transfer(from, to, value);
    }

    function _approve(address owner, address spender, uint256 value) private {
        if (spender == address(0)) revert ERC20InvalidSpender(address(0));
        allowance[owner][spender] = value;
        emit Approval(owner, spender, value);
    }

    // ----------------------------------------------------------------------------- EIP-2612

    /// Sets `allowance[owner][spender] = value` on `owner`'s signature of the `Permit` type
    /// (nonce `nonces[owner]`, then incremented), if `block.timestamp <= deadline`.
    function permit(
        address owner,
        address spender,
        uint256 value,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external {
        if (block.timestamp > deadline) revert ERC2612ExpiredSignature(deadline);
        uint256 nonce = nonces[owner];
        bytes32 structHash = keccak256(abi.encode(PERMIT_TYPEHASH, owner, spender, value, nonce, deadline));
        bytes32 digest = keccak256(abi.encodePacked("\x19\x01", DOMAIN_SEPARATOR(), structHash));
        address signer = address(0);
        if (uint256(s) <= SECP256K1_HALF_N && (v == 27 || v == 28)) {
            signer = ecrecover(digest, v, r, s);
        }
        if (signer == address(0) || signer != owner) revert ERC2612InvalidSigner(signer, owner);
        nonces[owner] = nonce + 1;
        _approve(owner, spender, value);
    }
}
