// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice A freely mintable ERC-20 for tests and local subnets (reward token).
contract TestToken is ERC20 {
    constructor() ERC20("sorap2p test token", "SORA") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
